"""The Runner the detection tools build: mmengine's, with a terminal that shows progress, warnings
and results, while the run directory's log file keeps everything (``--verbose``: the terminal too)."""
from __future__ import annotations

import logging

from mmengine.logging import MMLogger
from mmengine.runner import Runner


class OneLineRecords(logging.Filter):
    """Passes warnings, errors and one-line records; multi-line INFO records (the environment, the
    config, the hook order) stay off the handler it filters."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or "\n" not in record.getMessage().strip()


class QuietRunner(Runner):
    """mmengine's ``Runner`` whose logger prints :class:`OneLineRecords` to the terminal, and names
    its log file there, which receives every record."""

    def build_logger(self, log_level="INFO", log_file=None, **kwargs) -> MMLogger:
        logger = super().build_logger(log_level, log_file, **kwargs)
        terminals = [handler for handler in logger.handlers if not isinstance(handler, logging.FileHandler)]
        for handler in terminals:
            if not any(isinstance(existing, OneLineRecords) for existing in handler.filters):
                handler.addFilter(OneLineRecords())
        logger.info(f"config, environment and the full log: {logger.log_file} (--verbose: shown here too)")
        return logger
