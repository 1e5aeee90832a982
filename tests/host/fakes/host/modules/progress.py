"""The host's task bookkeeping (what ``/internal/progress`` and ``/internal/pending-tasks``
report): a queue of pending task ids, the current task, the finished ones. ``create_task_id``
exists from WebUI 1.8 on."""

import itertools

import fake_host_config as C

current_task = None
pending_tasks = {}
finished_tasks = []
events = []  # (what, task id), for the tests
_numbers = itertools.count(1)


def add_task_to_queue(id_job):
    events.append(("queued", id_job))
    pending_tasks[id_job] = len(events)


def start_task(id_task):
    global current_task
    events.append(("started", id_task))
    current_task = id_task
    pending_tasks.pop(id_task, None)


def finish_task(id_task):
    global current_task
    events.append(("finished", id_task))
    if current_task == id_task:
        current_task = None
    finished_tasks.append(id_task)


if C.WEBUI >= (1, 8):
    def create_task_id(task_type):
        return f"task({task_type}-{next(_numbers):015d})"
