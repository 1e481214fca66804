"""The ceiling of any Tornado + Redis service: parse the JSON body, one EVALSHA, answer.

``python -m bench.ceiling --port=P --redis-url=URL``. No validation, no identity, no
records: what is left of /exchange when everything echoes does is taken away. It runs in
Tornado's HTTPServer with the same explicit limits as echoes (body size, body and idle
timeouts), which a public server must set.
"""

import argparse
import asyncio
import json

import redis.asyncio as aioredis
import tornado.web

from echoes.config import Settings
from echoes.server import make_server

SCRIPT = "return redis.call('ZCARD', KEYS[1])"


class Exchange(tornado.web.RequestHandler):
    async def post(self) -> None:
        message = json.loads(self.request.body)
        await self.application.settings["script"](keys=[message["idempotencyKey"]])
        self.set_header("Content-Type", "application/json")
        self.finish(b"[]")


async def main(port: int, redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    app = tornado.web.Application([("/exchange", Exchange)], script=client.register_script(SCRIPT))
    make_server(app, Settings()).listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.redis_url))  # no access log, as echoes in the bench
