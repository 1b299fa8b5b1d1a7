"""Data sets for cnflow's models that are not 2-D toy densities (those live in `toydata`)."""
