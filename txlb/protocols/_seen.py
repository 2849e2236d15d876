"""
A bounded memory of the byte strings seen once, for the tables of
remembered request and response heads: a head is remembered the second time
it is parsed, not the first, because remembering costs more than parsing
once and heads that vary (cookies, paths) seldom come again.
"""

from __future__ import annotations


class SeenOnce(set[int]):
    """
    The hashes of the byte strings seen once; emptied when full.  A hash
    that collides only makes a string count as seen before: what is then
    remembered is still looked up by its exact bytes.
    """

    def __init__(self, maximum: int) -> None:
        """
        @param maximum: how many hashes are kept before starting over.
        """
        super().__init__()
        self.maximum = maximum

    def again(self, data: bytes) -> bool:
        """
        @return: whether C{data} was seen before; if not, it is now.
        """
        key = hash(data)
        if key in self:
            return True
        if len(self) >= self.maximum:
            self.clear()
        self.add(key)
        return False
