"""(placeholder: being written)"""


def add_arguments(parser):
    pass


def run(args):
    raise NotImplementedError("wbc-edge compare is not written yet")
