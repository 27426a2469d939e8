import sys

from atomica_ray.cli.main import main

sys.exit(main())
