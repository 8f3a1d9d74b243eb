"""The one base class of every error that a user's input or files can cause.

Each stage raises a subclass that names the file or key at fault
(:class:`~auxseg.config.ConfigError`, :class:`~auxseg.checkpoint_io.CheckpointError`,
:class:`~auxseg.contracts.label_folder.LabelFolderError`, ...). The command
line (:func:`auxseg.cli.run_config_command`) turns them into one line on
stderr and an exit code: 2 for a config error, 1 for any other input error.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AuxsegError(Exception):
    """An error caused by the user's input (config, files, data); its message names what and where."""
