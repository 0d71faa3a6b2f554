"""moto's server (moto[server], PyPI) for the SQS test suites, with fixes to
its SQS queues made before it starts:

- deleting a message rebuilds the queue's message list without holding the
  queue's lock, so a message sent (or deleted) meanwhile by another request
  thread is lost (or comes back), and two receives at once can both hand out
  the same message: deletes and receives now take the lock sends take (a
  long poll lets go of it while it waits);
- a long poll on a FIFO queue whose visible messages all belong to message
  groups in flight spins on the CPU until its wait time ends: it now sleeps
  until a message is sent, deleted or made visible again (or a second
  passes), then looks again;
- a delete walks the whole queue twice: it now walks it once;
- every send reads the queue's attributes, which count its messages by
  asking each one for the time through `datetime` arithmetic (seconds for a
  queue of a few thousand): the time is now read with `time.time()`, and the
  counts — approximate in SQS too — are taken at most every half second;
- a receive from a FIFO queue takes messages in queue order, a few of many
  groups, where SQS "first attempts to return as many messages with the same
  message group ID as possible": it now does that too (which is what makes
  a consumer's batches of one key large).

Usage: python3 scripts/moto_sqs.py -H 127.0.0.1 -p 4566
"""

import time

import moto.server
import moto.sqs.models as sqs
from moto.sqs.exceptions import ReceiptHandleIsInvalid


def delete_message(self, receipt_handle):
    with self._messages_lock:
        if receipt_handle in self.deleted_messages:
            # Already deleted: SQS accepts deleting it again.
            return
        for i, message in enumerate(self._messages):
            if message.had_receipt_handle(receipt_handle):
                self.pending_messages.discard(message)
                self.deleted_messages.update(message.all_receipt_handles)
                del self._messages[i]
                # A FIFO group may be free again: wake the long polls.
                self._messages_lock.notify_all()
                return
        raise ReceiptHandleIsInvalid()


def wait_for_messages(self, timeout):
    # The receive loop calls this when nothing was deliverable.
    with self._messages_lock:
        self._messages_lock.wait(timeout=timeout)


_receive_message = sqs.SQSBackend.receive_message


def receive_message(self, queue_name, *args, **kwargs):
    queue = self.get_queue(queue_name)
    # A reentrant lock: `wait_for_messages` releases it while it waits.
    with queue._messages_lock:
        return _receive_message(self, queue_name, *args, **kwargs)


_change_message_visibility = sqs.SQSBackend.change_message_visibility


def change_message_visibility(self, queue_name, receipt_handle, visibility_timeout):
    _change_message_visibility(self, queue_name, receipt_handle, visibility_timeout)
    if int(visibility_timeout) == 0:
        queue = self.get_queue(queue_name)
        with queue._messages_lock:
            queue._messages_lock.notify_all()


_unix_time = sqs.unix_time


def unix_time(dt=None):
    return time.time() if dt is None else _unix_time(dt)


def unix_time_millis(dt=None):
    return unix_time(dt) * 1000.0


def _counts(self):
    now = time.time()
    cached = getattr(self, "_eventbus_counts", None)
    if cached is None or now - cached[0] > 0.5:
        ms = now * 1000.0
        visible = delayed = hidden = 0
        for m in self._messages:
            is_delayed = ms < m.delayed_until
            is_visible = ms > m.visible_at
            delayed += is_delayed
            hidden += not is_visible
            visible += is_visible and not is_delayed
        cached = (now, visible, delayed, hidden)
        self._eventbus_counts = cached
    return cached


def messages(self):
    ms = time.time() * 1000.0
    visible = [
        m for m in self._messages if ms > m.visible_at and not ms < m.delayed_until
    ]
    if not self.fifo_queue:
        return visible
    first_seen = {}
    for m in visible:
        first_seen.setdefault(m.group_id, len(first_seen))
    # Stable: each group keeps its order.
    return sorted(visible, key=lambda m: first_seen[m.group_id])


sqs.Queue.messages = property(messages)
sqs.Queue.approximate_number_of_messages = property(lambda self: _counts(self)[1])
sqs.Queue.approximate_number_of_messages_delayed = property(lambda self: _counts(self)[2])
sqs.Queue.approximate_number_of_messages_not_visible = property(lambda self: _counts(self)[3])
sqs.unix_time = unix_time
sqs.unix_time_millis = unix_time_millis
sqs.Queue.delete_message = delete_message
sqs.Queue.wait_for_messages = wait_for_messages
sqs.SQSBackend.receive_message = receive_message
sqs.SQSBackend.change_message_visibility = change_message_visibility

if __name__ == "__main__":
    moto.server.main()
