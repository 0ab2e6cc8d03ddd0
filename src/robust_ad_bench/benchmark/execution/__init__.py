"""Running a grid: the units of work (``tasks``), one step wherever it runs (``steps``), the scheduler, the
serial, local and Ray executors, the claims of two runs on one folder, the model cache, and the runner that
stores every event as it arrives."""
