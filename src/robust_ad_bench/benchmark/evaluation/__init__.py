"""The evaluation of one trained model: each job's attack and metrics (``scoring``), its sanity checks and
per-image worst cases (``verification``), its certificates. Pure computation (files only in the adversarial
image folder it is given): the execution stage decides where it runs and stores what it returns."""
