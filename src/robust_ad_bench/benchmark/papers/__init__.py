"""Papers: their packaged configs and reported figures (``catalog``), the figure that matches a leaderboard cell
(``reported``), and ``reproduce`` (a paper's configs on the data present, reported against reproduced)."""
