"""Reading the residual stream: hook names of every site, the unembedding, capture."""
