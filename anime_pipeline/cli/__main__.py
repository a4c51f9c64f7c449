"""``python -m anime_pipeline.cli`` is ``anime-pipeline``."""

import sys

from anime_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
