"""Every table, plot and HTML page the evaluations (and the query and demo pages) write."""
