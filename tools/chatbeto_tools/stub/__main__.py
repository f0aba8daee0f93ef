"""`python -m chatbeto_tools.stub --port N`."""

from __future__ import annotations

import argparse

from aiohttp import web

from chatbeto_tools.stub import create_stub_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="chatbeto_tools.stub")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    web.run_app(
        create_stub_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=1,
    )


if __name__ == "__main__":
    main()
