"""The embedded broker of `make run` and the SQLite test runs: kombu's filesystem transport,
with a publish and a claim that a concurrent reader cannot see half-done.

kombu's own `_put` opens the message file under its final name and then writes it, so a worker
polling the folder in between claims an empty file; the consumer's JSON decode then raises inside
its loop and the whole worker stops (kombu 5.x). Its `_get` claims a message with
`shutil.move` into the system temp folder, which is a copy and a delete when that folder is on
another filesystem, so two workers can both read the same message.

Here a message is written under a name no reader looks at and renamed into place: `os.replace`
within one folder is atomic, so a reader sees no file or the whole file. A reader claims a
message by renaming it into the processed folder (on the broker's filesystem, see settings):
exactly one rename succeeds, the other readers find it gone and move on.
"""

from __future__ import annotations

import os
import uuid
from queue import Empty
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

# Not "<anything>.<queue>.msg": kombu's readers (`_get`, `_size`, `_purge`) skip it.
_PARTIAL_SUFFIX = ".partial"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        partial = os.path.join(self.data_folder_out, f"{uuid.uuid4()}{_PARTIAL_SUFFIX}")
        try:
            with open(partial, "wb") as message:
                message.write(str_to_bytes(dumps(payload)))
            os.replace(partial, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add a message to {queue!r}") from exc

    def _get(self, queue):
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(self.processed_folder, name)
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except FileNotFoundError:
                continue  # another reader claimed it first
            try:
                with open(claimed, "rb") as message:
                    payload = message.read()
                if not self.store_processed:
                    os.remove(claimed)
            except OSError as exc:
                raise filesystem.ChannelError(f"Cannot read {claimed!r}") from exc
            return loads(bytes_to_str(payload))
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel
