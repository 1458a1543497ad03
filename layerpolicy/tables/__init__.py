"""Tidy tables and their statistics: schema, token table, per-prompt means, shape, comparison.

schema      every column list, once
tokens      the token table of a scored batch
stats       per-prompt means and across-prompt summaries with bootstrap CIs
shape       convergence, abruptness, EIC regions, boundary layer
difference  before/after differences
comparison  the comparison table and its notes
reading     the plain-language reading of a comparison
"""
