"""The moment tinyinduct was first imported (before torch loads): entry points report the wall
time of the whole process from here."""

from time import perf_counter

IMPORT_START = perf_counter()
