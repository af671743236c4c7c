"""The command-line entry points (`python -m experiments.<command>`), thin absl apps over
`sfm_jax`. On Linux CPUs such a command first restarts itself once with glibc's huge pages
turned on (`experiments.host`: large steps 1.1-1.2x faster); importing this package from
anywhere else (pytest, a notebook) changes nothing."""

from experiments import host as _host

_host.restart_with_huge_pages()
