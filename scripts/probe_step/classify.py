"""Summarise probe results and compare them with a run of the old code (10145ee).
Usage: python scripts/probe_step/classify.py new.jsonl [old.jsonl]"""
import collections, json, sys


def load(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        out[(r['name'], r['path'], r['config'], r['ngroups'], r['pre'])] = r
    return out


new = load(sys.argv[1])
old = load(sys.argv[2]) if len(sys.argv) > 2 else {}
print('cases', len(new))
print('status', dict(collections.Counter(r['status'] for r in new.values())))
flags = collections.Counter()
for k, r in new.items():
    if r.get('kernel_refuses_py_accepts'):
        flags['kernel_refuses_py_accepts'] += 1
    if 'DIRTY' in r.get('second', ''):
        flags['second_step_dirty'] += 1
    if r.get('second') == 'stepped':
        flags['second_step_stepped_after_refusal'] += 1
print('flags', dict(flags))


def show(title, items):
    print(f'\n## {title}: {len(items)}')
    by = collections.defaultdict(list)
    for k, r in items:
        by[k[0]].append((k, r))
    for name, rs in sorted(by.items()):
        k, r = rs[0]
        paths = sorted({f'{x[1]}/{x[2]}/g{x[3]}/pre{x[4]}' for x, _ in rs})
        print(f'- {name} x{len(rs)}: {r["status"]} {r.get("msg", "")[:230]!r} {r.get("changed", r.get("detail", ""))}'
              f'\n    old: {old[k]["status"] + " " + old[k].get("msg", "")[:120] if k in old else "-"}'
              f'\n    at: {" ".join(paths[:12])}{" ..." if len(paths) > 12 else ""}')


show('CRASH/HANG/HARNESS_ERROR', [(k, r) for k, r in new.items() if r['status'] in ('CRASH', 'HANG', 'HARNESS_ERROR')])
show('ACCEPTED_BAD (an invalid input accepted)', [(k, r) for k, r in new.items() if r['status'] == 'ACCEPTED_BAD'])
show('RAISE_DIRTY', [(k, r) for k, r in new.items() if r['status'] == 'RAISE_DIRTY'])
show('OK_MISMATCH', [(k, r) for k, r in new.items() if r['status'] == 'OK_MISMATCH'])
show('kernel refuses what the Python checks accept', [(k, r) for k, r in new.items()
                                                      if r.get('kernel_refuses_py_accepts')])
show('raised (not by SGDF\'s own checks) though the Python checks alone accept', [(k, r) for k, r in new.items()
                                                                   if r['status'].startswith('RAISE')
                                                                   and r.get('py_accepts') and not r.get('msg', '')
                                                                   .split(': ', 1)[-1].startswith(('SGDF', 'AdaSGDF'))])
show('second step after a refusal changed something', [(k, r) for k, r in new.items() if 'DIRTY' in r.get('second', '')])
if old:
    show('raises now, stepped at 10145ee', [(k, r) for k, r in new.items() if r['status'].startswith('RAISE')
                                            and k in old and old[k]['status'].startswith('OK')])
    show('steps now, raised at 10145ee', [(k, r) for k, r in new.items() if r['status'].startswith('OK')
                                          and k in old and old[k]['status'].startswith('RAISE')])
    show('status changed otherwise', [(k, r) for k, r in new.items() if k in old and r['status'] != old[k]['status']
                                      and r['status'][:2] == old[k]['status'][:2]])
    print('\nold status', dict(collections.Counter(r['status'] for r in old.values())))
