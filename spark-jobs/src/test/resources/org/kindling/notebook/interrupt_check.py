"""Interrupts cells of a running Kindling kernel the way Jupyter does (an interrupt_request message).

Prints one line per check for NotebookKernelIT: "NAME: STATUS EVALUE".
"""
import time

import jupyter_client


def reply_to(kc, msg_id):
    deadline = time.time() + 60
    while time.time() < deadline:
        msg = kc.get_shell_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg["content"]
    raise TimeoutError("no reply to " + msg_id)


def interrupted(kc, km, name, code):
    msg_id = kc.execute(code)
    time.sleep(3)
    km.interrupt_kernel()
    reply = reply_to(kc, msg_id)
    print(f"{name}: {reply['status']} {reply.get('evalue', '')}", flush=True)


km, kc = jupyter_client.manager.start_new_kernel(kernel_name="kindling", startup_timeout=180)
try:
    interrupted(kc, km, "sleep", "Thread.sleep(120_000);")
    interrupted(kc, km, "busy", "long n = 0; while (true) { n++; }")
    after = reply_to(kc, kc.execute("1 + 2"))
    print(f"after: {after['status']}", flush=True)
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=False)
