"""The ceiling of any Tornado + Redis service: parse the JSON body, one EVALSHA, answer.

``python -m bench.ceiling --port=P --redis-url=URL``. No validation, no identity, no
records: what is left of /exchange when everything echoes does is taken away.
"""

import asyncio
import json

import redis.asyncio as aioredis
import tornado.web
from tornado.options import define, options, parse_command_line

SCRIPT = "return redis.call('ZCARD', KEYS[1])"


class Exchange(tornado.web.RequestHandler):
    async def post(self) -> None:
        message = json.loads(self.request.body)
        await self.application.settings["script"](keys=[message["idempotencyKey"]])
        self.set_header("Content-Type", "application/json")
        self.finish(b"[]")


async def main() -> None:
    client = aioredis.Redis.from_url(options.redis_url)
    app = tornado.web.Application([("/exchange", Exchange)], script=client.register_script(SCRIPT))
    app.listen(options.port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    define("port", type=int, default=8001)
    define("redis_url", type=str, default="redis://127.0.0.1:6379/0")
    parse_command_line()
    asyncio.run(main())
