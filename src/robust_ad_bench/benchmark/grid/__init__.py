"""What to run: the grid config (defaults, YAML, flags), its validation, the jobs and their content-hash keys,
how a grid runs (``execution``: never part of a key), and the seeds and devices every key turns into
(``runtime``). Imports only the protocol stage and the layers below."""
