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
- a delete walks the whole queue twice: it now walks it once.

Usage: python3 scripts/moto_sqs.py -H 127.0.0.1 -p 4566
"""

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


sqs.Queue.delete_message = delete_message
sqs.Queue.wait_for_messages = wait_for_messages
sqs.SQSBackend.receive_message = receive_message
sqs.SQSBackend.change_message_visibility = change_message_visibility

if __name__ == "__main__":
    moto.server.main()
