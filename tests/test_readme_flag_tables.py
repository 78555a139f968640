"""README.md's Megatron-LM flag tables are the code's (tools/megatron_flag_tables.py)."""
import importlib.util
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


def _tool():
    spec = importlib.util.spec_from_file_location("megatron_flag_tables",
                                                  os.path.join(ROOT, "tools", "megatron_flag_tables.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_tables_equal_the_generated_ones():
    tool = _tool()
    block = tool.readme_block(open(os.path.join(ROOT, "README.md")).read())
    assert block is not None, "README.md lost its megatron-flag-tables markers"
    assert block == tool.tables(), "stale: run python tools/megatron_flag_tables.py --write"


def test_every_table_flag_is_in_the_generated_tables():
    from megatron_sp.arguments import megatron_flags as t
    text = _tool().tables()
    for table in (t.NO_EFFECT, t.SAME_AS_HERE, t.DEPRECATED, t.REFUSED):
        for flag in table:
            assert f"| `{flag}` |" in text, flag
