"""The one-page HTML report of a search (search/report.py): its sections and the patient sections. Imports
`search.evaluation` and `search.board`."""
