"""The results store (one SQLite file per results folder) and everything that reads it: one configuration per
cell (``cells``), the leaderboard, audit, defects, plots and the HTML report. Imports the grid and protocol
stages; the runner (execution) writes into the store, nothing here runs a model."""
