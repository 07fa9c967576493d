"""cljax.host_memory: when an entry point re-executes itself with glibc's huge-page tunable."""

import os
import platform
import subprocess
import sys

from cljax import host_memory

GLIBC = ('glibc', '2.36')


def test_the_tunable_is_added_only_where_it_helps():
  env = host_memory.tuned_environment({'HOME': '/h'}, 'madvise', GLIBC)
  assert env == {'HOME': '/h', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1', host_memory.ADDED: '1'}
  # The user's own tunables are kept, ours appended.
  env = host_memory.tuned_environment({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, 'madvise', GLIBC)
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
  # Nothing to do: THP always/never/unknown, old or no glibc, already set, switched off.
  assert host_memory.tuned_environment({}, 'always', GLIBC) is None
  assert host_memory.tuned_environment({}, 'never', GLIBC) is None
  assert host_memory.tuned_environment({}, None, GLIBC) is None
  assert host_memory.tuned_environment({}, 'madvise', ('glibc', '2.31')) is None
  assert host_memory.tuned_environment({}, 'madvise', ('', '')) is None
  assert host_memory.tuned_environment({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, 'madvise', GLIBC) is None
  assert host_memory.tuned_environment({'CLJAX_HUGE_PAGES': '0'}, 'madvise', GLIBC) is None


def test_as_started_removes_exactly_what_cljax_added():
  user = {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2', 'X': '1'}
  assert host_memory.as_started(host_memory.tuned_environment(user, 'madvise', GLIBC)) == user
  assert host_memory.as_started(host_memory.tuned_environment({'X': '1'}, 'madvise', GLIBC)) == {'X': '1'}
  # A tunable the user set themselves stays.
  own = {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  assert host_memory.as_started(own) == own


def test_reexec_runs_the_same_command_with_the_tunable(tmp_path):
  # In a child: re-executes where the kernel's THP mode is madvise, and only once.
  script = tmp_path / 'child.py'
  script.write_text(
      'import os, sys\n'
      'from cljax import host_memory\n'
      'print("start", os.environ.get("GLIBC_TUNABLES", "-"), flush=True)\n'
      'host_memory.reexec_with_huge_pages([sys.executable] + sys.argv)\n'
      'print("args", sys.argv[1:])\n')
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', host_memory.ADDED)}
  out = subprocess.run([sys.executable, str(script), 'a', 'b'], capture_output=True, text=True,
                       env=env, check=True).stdout.splitlines()
  expected = host_memory.tuned_environment(env, host_memory._thp_mode(), platform.libc_ver())
  if expected is None:
    assert out == ['start -', "args ['a', 'b']"]
  else:
    assert out == ['start -', 'start glibc.malloc.hugetlb=1', "args ['a', 'b']"]
