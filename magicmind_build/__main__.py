import sys

from magicmind_build.cli import main

sys.exit(main())
