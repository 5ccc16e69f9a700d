#!/usr/bin/env python3
"""Interop check: an independent client (Python's `websockets`, stdlib HTTP) speaking the
confab.v1.json subprotocol to a running server. Registers two users, logs in, opens a
direct conversation, sends, receives the Deliver, sends a read receipt and sees the
ReceiptUpdate arrive at the sender. Exit 0 on success; prints what failed otherwise.

Usage: json_client.py <http host:port>
"""
import asyncio
import base64
import json
import os
import sys
import urllib.request

import websockets

ADDR = sys.argv[1]


def post(path, body):
    req = urllib.request.Request(
        f"http://{ADDR}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


async def recv_until(ws, kind):
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame["body"]["type"] == kind:
            return frame


async def session(token):
    ws = await websockets.connect(f"ws://{ADDR}/ws", subprotocols=["confab.v1.json"])
    await ws.send(json.dumps({"request_id": "1", "body": {"type": "hello", "token": token,
                                                          "client": "py-interop"}}))
    welcome = await recv_until(ws, "welcome")
    done = await recv_until(ws, "sync_batch")
    while done["body"]["has_more"]:
        done = await recv_until(ws, "sync_batch")
    return ws, welcome


async def main():
    suffix = os.urandom(3).hex()
    names = [f"py_a_{suffix}", f"py_b_{suffix}"]
    for name in names:
        post("/v1/users", {"username": name, "password": "correct horse"})
    logins = [post("/v1/login", {"username": n, "password": "correct horse"}) for n in names]
    a, _ = await session(logins[0]["access_token"])
    b, _ = await session(logins[1]["access_token"])
    await a.send(json.dumps({"request_id": "2", "body": {"type": "open_direct",
                                                         "peer_username": names[1]}}))
    opened = await recv_until(a, "conversation_opened")
    conversation = opened["body"]["conversation"]["conversation_id"]
    key = os.urandom(16).hex()
    await a.send(json.dumps({"request_id": "3", "body": {
        "type": "send", "conversation_id": conversation,
        "idempotency_key": key, "body": base64.b64encode(b"hello from python").decode()}}))
    ack = await recv_until(a, "ack")
    assert ack["request_id"] == "3", ack
    assert ack["body"]["seq"] == "1", ack
    deliver = await recv_until(b, "deliver")
    message = deliver["body"]["message"]
    assert base64.b64decode(message["body"]) == b"hello from python", message
    assert message["seq"] == "1" and message["conversation_id"] == conversation, message
    await b.send(json.dumps({"request_id": "4", "body": {
        "type": "receipt", "conversation_id": conversation, "kind": "read", "up_to_seq": "1"}}))
    update = await recv_until(a, "receipt_update")
    state = update["body"]["states"][0]
    assert state["read_seq"] == "1" and state["user_id"] == logins[1]["user_id"], update
    await a.close()
    await b.close()
    print("interop ok")


asyncio.run(main())
