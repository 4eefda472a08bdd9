"""A peer for dingstream-bench: the official Python SDK (dingtalk-stream) acking bot messages.

dingstream-bench starts this with DINGTALK_OPENAPI_ENDPOINT pointing at its simulator (the SDK
reads that variable itself) and the credentials in BENCH_CLIENT_ID / BENCH_CLIENT_SECRET. The
handler parses each message and acks from memory, the SDK's documented pattern: nothing is stored.
"""
import logging
import os

import dingtalk_stream
from dingtalk_stream import AckMessage


class AckingHandler(dingtalk_stream.CallbackHandler):
    async def process(self, callback: dingtalk_stream.CallbackMessage):
        dingtalk_stream.ChatbotMessage.from_dict(callback.data)
        return AckMessage.STATUS_OK, 'OK'


def main():
    credential = dingtalk_stream.Credential(os.environ["BENCH_CLIENT_ID"], os.environ["BENCH_CLIENT_SECRET"])
    logger = logging.getLogger("bench.peer")
    logger.setLevel(logging.WARNING)
    client = dingtalk_stream.DingTalkStreamClient(credential, logger=logger)
    # The SDK finds its local address by routing towards a public host; on loopback there is none.
    client.get_host_ip = lambda: "127.0.0.1"
    client.register_callback_handler(dingtalk_stream.ChatbotMessage.TOPIC, AckingHandler())
    client.start_forever()


if __name__ == "__main__":
    main()
