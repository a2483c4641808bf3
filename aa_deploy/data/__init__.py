"""Task data: GLUE and user files as TaskData, and the paper's low-data split."""

from aa_deploy.data.errors import DataError
from aa_deploy.data.examples import Example, TaskData, TaskDefinition
from aa_deploy.data.files import SUPPORTED_SUFFIXES, load_file_task
from aa_deploy.data.glue import glue_spec, read_glue_file, read_glue_split
from aa_deploy.data.loading import GLUE_TASKS, load_task
from aa_deploy.data.splits import low_data_split

__all__ = [
    "DataError",
    "Example",
    "GLUE_TASKS",
    "SUPPORTED_SUFFIXES",
    "TaskData",
    "TaskDefinition",
    "glue_spec",
    "load_file_task",
    "load_task",
    "low_data_split",
    "read_glue_file",
    "read_glue_split",
]
