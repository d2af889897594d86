"""The library behind the ops commands: it reads and writes goalhorn's stores and returns reports,
and never prints (``goalhorn.ops`` renders)."""
