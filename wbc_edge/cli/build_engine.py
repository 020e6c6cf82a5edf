"""(placeholder: being written)"""


def add_arguments(parser):
    pass


def run(args):
    raise NotImplementedError("wbc-edge build_engine is not written yet")
