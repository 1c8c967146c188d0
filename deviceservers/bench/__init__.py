"""The virtual optical bench (``tangodaq bench``): simulators on TCP ports, coupled by optics."""


def main(argv: list[str] | None = None) -> int:
    from .server import main as server_main

    return server_main(argv)
