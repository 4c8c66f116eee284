import os


def greet(greeting, name):
    return f"{greeting} {name}{os.environ['HELPER_SUFFIX']}"
