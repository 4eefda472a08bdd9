"""A peer for dingstream-bench: the official Python SDK (dingtalk-stream) handling bot messages.

dingstream-bench starts this with DINGTALK_OPENAPI_ENDPOINT pointing at its simulator (the SDK
reads that variable itself) and the credentials in BENCH_CLIENT_ID / BENCH_CLIENT_SECRET.

    python_sdk_peer.py         parses each message and acks from memory: nothing is stored.
    python_sdk_peer.py reply   also answers it with a text reply through the session webhook, with
                               the SDK's own ChatbotHandler.reply_text from the callback, as its
                               examples do, then acks.
"""
import logging
import os
import sys

import dingtalk_stream
from dingtalk_stream import AckMessage


class AckingHandler(dingtalk_stream.CallbackHandler):
    async def process(self, callback: dingtalk_stream.CallbackMessage):
        dingtalk_stream.ChatbotMessage.from_dict(callback.data)
        return AckMessage.STATUS_OK, 'OK'


class ReplyingHandler(dingtalk_stream.ChatbotHandler):
    async def process(self, callback: dingtalk_stream.CallbackMessage):
        incoming = dingtalk_stream.ChatbotMessage.from_dict(callback.data)
        text = incoming.text.content.strip() if incoming.text else ""
        self.reply_text(f"{incoming.sender_nick} said: {text}", incoming)
        return AckMessage.STATUS_OK, 'OK'


def main():
    replying = sys.argv[1:] == ["reply"]
    credential = dingtalk_stream.Credential(os.environ["BENCH_CLIENT_ID"], os.environ["BENCH_CLIENT_SECRET"])
    logger = logging.getLogger("bench.peer")
    logger.setLevel(logging.WARNING)
    client = dingtalk_stream.DingTalkStreamClient(credential, logger=logger)
    # The SDK finds its local address by routing towards a public host; on loopback there is none.
    client.get_host_ip = lambda: "127.0.0.1"
    handler = ReplyingHandler() if replying else AckingHandler()
    client.register_callback_handler(dingtalk_stream.ChatbotMessage.TOPIC, handler)
    client.start_forever()


if __name__ == "__main__":
    main()
