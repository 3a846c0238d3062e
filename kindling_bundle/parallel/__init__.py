"""The optional worker processes that encode (export) and decode (verify) record frames beside
the main process, chosen by `choose_workers` alone."""

from kindling_bundle.parallel.strategy import Workers, check_workers, choose_workers

__all__ = ["Workers", "check_workers", "choose_workers"]
