"""``python -m loader_assets`` is the ``loader-assets`` command."""

from loader_assets.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
