"""Lightning's CSVLogger, made to keep what an earlier process wrote to the same run's metrics.csv.

Two processes write one run's metrics.csv: the one that resumes an interrupted run, and under trainer=ddp
the spawned worker that trains and the process that tests. Lightning's writer deletes an existing
metrics.csv when it starts, which threw away the curves the report reads; this writer adds to it.
(Lightning writes the file after every logging call, so a killed process loses no row before its last
checkpoint.)
"""
import csv

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingWriter(ExperimentWriter):
    _took_header = False

    def _check_log_dir_exists(self) -> None:
        pass  # Lightning's deletes metrics.csv here

    def save(self) -> None:
        # New columns make Lightning rewrite the file under a new header, which must include the columns an
        # earlier process wrote; after this writer's first save Lightning keeps the header in step itself.
        if self.metrics and not self._took_header:
            if self._fs.isfile(self.metrics_file_path):
                with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                    self.metrics_keys = sorted(set(self.metrics_keys) | set(next(csv.reader(f), [])))
            self._took_header = True
        super().save()


class CSVLogger(LightningCSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment
