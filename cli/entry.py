"""The console script. Kept free of heavy imports so that Ctrl-C while torch is still loading exits cleanly too."""

import sys


def main() -> None:
    try:
        from framefusion_cli.app import app

        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
