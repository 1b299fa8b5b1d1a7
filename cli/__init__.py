"""The `cnflow` command line: thin click wrappers over cnflow's plain functions."""
