"""Scheduler labels (WebUI 1.9+)."""


class Scheduler:
    def __init__(self, name, label):
        self.name, self.label = name, label


schedulers = [Scheduler("automatic", "Automatic"), Scheduler("karras", "Karras"),
              Scheduler("exponential", "Exponential")]
