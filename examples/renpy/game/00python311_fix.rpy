# WORKAROUND FOR THE TEST RUN ONLY - not part of the dialogue-tts binding.
#
# Ren'Py 8.0.3 (the Debian "renpy" package) running on Python 3.11 crashes at
# start-up with "ValueError: AST node line range (N, 1) is not valid": the
# nodes it adds to compiled Python get a line number but no end line number.
# Ren'Py 8.1 and newer, and Ren'Py's own builds (which bundle their Python),
# do not need this. It replaces renpy.python.fix_missing_locations with one
# that also fills in end_lineno / end_col_offset, and does nothing on
# Pythons before 3.11.

python early hide:
    import sys

    if sys.version_info >= (3, 11):
        import ast
        import renpy.python

        def fix_missing_locations(node, lineno, col_offset):
            if "lineno" in node._attributes:
                if getattr(node, "lineno", None) is None:
                    node.lineno = lineno
                else:
                    lineno = node.lineno
            if "end_lineno" in node._attributes:
                if getattr(node, "end_lineno", None) is None or node.end_lineno < lineno:
                    node.end_lineno = lineno
            if "col_offset" in node._attributes:
                if getattr(node, "col_offset", None) is None:
                    node.col_offset = col_offset
                else:
                    col_offset = node.col_offset
            if "end_col_offset" in node._attributes:
                if getattr(node, "end_col_offset", None) is None:
                    node.end_col_offset = col_offset
            for child in ast.iter_child_nodes(node):
                fix_missing_locations(child, lineno, col_offset)

        renpy.python.fix_missing_locations = fix_missing_locations
