"""The clipcite Kubeflow pipeline's entry point; the DAG is ``clipcite/pipeline/dag.py``, its command line
``clipcite/pipeline/cli.py``.

    python pipeline.py run                     # local, through kfp.local, on the offline default (the toy world)
    python pipeline.py compile [--output pipeline.yaml]
    python pipeline.py submit --host URL [--experiment NAME] [--namespace NS] [--param key=value ...]
    python pipeline.py schedule --host URL --cron "0 0 3 * * 1" [--max-concurrency N] [--no-catchup]
"""

import sys

from clipcite.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
