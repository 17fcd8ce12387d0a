"""The Redis broker's Lua scripts: each one atomic, each on one Cluster slot (see ``keys``).

Two families. A task's own scripts take its ``{t:<task>}`` keys. The queue's
scripts take the ``{jobs}`` keys and start with the same five KEYS, the queue
``Q``: the streams set, the rotation, the shared wake list, the workers set and
the returned stream; their helpers (``_QUEUE``) are prepended to each of them.

A job entry is ``task``, ``tenant``. Tokens: every job added to a stream pushes
one token onto the wake list of that stream (the shared one, or the inbox's);
a blocked worker pops one (BLPOP) and a take consumes exactly one for the job
it takes, so idle workers sleep on Redis instead of polling, and a token lost
to a crash only delays a job until some worker's blocking read times out.
"""

from __future__ import annotations

# ------------------------------------------------------------ a task's scripts

# KEYS: state, events. ARGV: entry id, max deliveries, stream, the entry it replaces ('' for none), the JSON
# of a `requeued` notice. -> {verdict, spec, fence}
# 'new': taken for the first time since it was queued (it leaves the queued count); 'ok': delivered again,
# replacing the entry of a worker that was lost (a started run gets the notice first); 'lost': delivered
# `max deliveries` times already, the taker stores "worker lost". Every take bumps `fence`, the delivery
# token every later write of the taker carries (PUBLISH, FINISH, RUN, UNCLAIM): a worker that was only
# frozen and comes back writes nothing once its delivery is no longer the current one.
TAKE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if status == 'done' then return {'done'} end
local entry = redis.call('HGET', KEYS[1], 'entry')
local verdict = 'ok'
if not entry then
  verdict = 'new'
elseif entry ~= ARGV[1] and entry ~= ARGV[4] then
  return {'duplicate'}
elseif tonumber(redis.call('HGET', KEYS[1], 'deliveries') or '0') >= tonumber(ARGV[2]) then
  verdict = 'lost'
end
redis.call('HSET', KEYS[1], 'entry', ARGV[1], 'stream', ARGV[3])
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
if verdict == 'lost' then return {verdict, redis.call('HGET', KEYS[1], 'spec'), fence} end
if verdict == 'ok' and status == 'running' then
  local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1
  redis.call('HSET', KEYS[1], 'seq', seq, 'status', 'queued')
  redis.call('XADD', KEYS[2], '*', 'seq', seq, 'event', ARGV[5])
end
redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
return {verdict, redis.call('HGET', KEYS[1], 'spec'), fence}
"""

# KEYS: state. ARGV: entry id, fence. -> {'ok', spec} | {'done'} | {'missing'} | {'other'}
# Gives a held job back: the task is queued again, with no entry, and this delivery does not count.
# No entry recorded: the entry was read but never taken (an interrupted claim), so it is the task's one.
# 'other': the entry is no longer the task's (another worker took it over): nothing to give back.
UNCLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if status == 'done' then return {'done'} end
local held = redis.call('HGET', KEYS[1], 'entry')
if held and held ~= ARGV[1] then return {'other'} end
if held and ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then return {'other'} end
redis.call('HDEL', KEYS[1], 'entry', 'stream')
redis.call('HSET', KEYS[1], 'status', 'queued')
if held and tonumber(redis.call('HGET', KEYS[1], 'deliveries') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'deliveries', -1)
end
return {'ok', redis.call('HGET', KEYS[1], 'spec')}
"""

# Whether ARGV[i] is the task's current delivery ('': a write that is no worker's, such as a queued cancel).
_FENCED = """
local function current(i)
  return ARGV[i] == '' or redis.call('HGET', KEYS[1], 'fence') == ARGV[i]
end
"""

# KEYS: state. ARGV: fence. Only a queued task becomes running (never a finished one, nor an unknown id).
# -> 1, or 0 when the delivery is no longer the current one.
RUN = (
    _FENCED
    + """
if not current(1) then return 0 end
if redis.call('HGET', KEYS[1], 'status') == 'queued' then redis.call('HSET', KEYS[1], 'status', 'running') end
return 1
"""
)

# KEYS: state, events. ARGV: seq, event JSON, maxlen, fence. -> the stored seq, 0 (unknown or done task), or
# -1 (the delivery is no longer the current one: the job moved on to another worker).
PUBLISH = (
    _FENCED
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'done' then return 0 end
if not current(4) then return -1 end
local seq = math.max(tonumber(ARGV[1]), tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1)
redis.call('HSET', KEYS[1], 'seq', seq)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, 'event', ARGV[2])
return seq
"""
)

# KEYS: state, events, control. ARGV: seq, exit JSON, maxlen, ttl ms, only-if-unclaimed 0/1, fence.
# -> {stored 1 | 0 (unknown, done or claimed) | -1 (not the current delivery), entry id, idempotency key, stream}
FINISH = (
    _FENCED
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'done' then return {0, '', '', ''} end
if not current(6) then return {-1, '', '', ''} end
local entry = redis.call('HGET', KEYS[1], 'entry') or ''
if ARGV[5] == '1' and (status ~= 'queued' or entry ~= '') then return {0, '', '', ''} end
local seq = math.max(tonumber(ARGV[1]), tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1)
redis.call('HSET', KEYS[1], 'status', 'done', 'seq', seq, 'exit', ARGV[2], 'exit_seq', seq)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, 'event', ARGV[2])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return {1, entry, redis.call('HGET', KEYS[1], 'idem') or '', redis.call('HGET', KEYS[1], 'stream') or ''}
"""
)

# KEYS: state, control. ARGV: tenant, kind, data, signal, maxlen. -> 1 sent, 0 not (unknown, foreign, done)
CONTROL = """
if redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') == 'done' then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'kind', ARGV[2], 'data', ARGV[3], 'signal', ARGV[4])
return 1
"""

# KEYS: a jobs stream. ARGV: entry id, consumer, group. -> 1 refreshed, 0 no longer ours (taken over, acknowledged)
# Checked and claimed in one step, so a heartbeat never takes back a job another worker has reclaimed.
HEARTBEAT = """
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[3], ARGV[1], ARGV[1], 1)
if not ok or #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[3], ARGV[2], 0, ARGV[1], 'JUSTID')
return 1
"""

# KEYS: idempotency key. ARGV: task id. Give the key back only if it still names this task.
RELEASE_KEY = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# ------------------------------------------------------------ the queue's scripts

# Prepended to every queue script: KEYS[1..5] are Q.
_QUEUE = """
local GROUP = 'workers'
local Q = {streams = KEYS[1], rotation = KEYS[2], wake = KEYS[3], workers = KEYS[4], returned = KEYS[5]}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A stream jobs are added to: with its consumer group (from 0, so entries already there are
-- delivered), and known to reclaim. A stream in the streams set has its group: they come and go together.
local function open_stream(stream)
  if redis.call('SISMEMBER', Q.streams, stream) == 1 then return end
  redis.pcall('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')  -- BUSYGROUP: it has one
  redis.call('SADD', Q.streams, stream)
end

-- A worker jobs may be routed to: its presence has not expired, and it is not leaving (draining).
local function alive(inbox, now)
  local deadline = redis.call('ZSCORE', Q.workers, inbox)
  if deadline == false or tonumber(deadline) <= now then return false end
  return redis.call('HGET', Q.workers .. ':names', inbox .. '|leaving') ~= '1'
end

-- What a worker's last presence said: whether it serves the isolation level; its room there for one more
-- session of the kind ('file' or 'stateful'), from its "level:files:stateful ..." words.
local function serves(inbox, level)
  local levels = redis.call('HGET', Q.workers .. ':names', inbox .. '|levels') or ''
  return string.find(' ' .. levels .. ' ', ' ' .. level .. ' ', 1, true) ~= nil
end

local function room_for(inbox, level, kind)
  local words = ' ' .. (redis.call('HGET', Q.workers .. ':names', inbox .. '|room') or '') .. ' '
  local files, cells = string.match(words, ' ' .. level .. ':(%d+):(%d+) ')
  return tonumber((kind == 'stateful' and cells or files) or '0')
end

-- Keep a session for its idle time from now, never past its absolute expiry. -> ms left (<= 0: it ended)
local function touch(session, now)
  local expires_at = tonumber(redis.call('HGET', session, 'expires_at') or '0')
  local left = math.min(expires_at - now, tonumber(redis.call('HGET', session, 'idle_ms') or '0'))
  if left <= 0 then redis.call('DEL', session) else redis.call('PEXPIRE', session, left) end
  return left
end

-- Add a job where it should run, with a wake token: a session's job goes to the inbox of its owner
-- if that worker is alive; else a job handed back (front) goes to `returned`, served first, and a
-- new one to its tenant's stream, which joins the rotation if it was not in it.
local function route(task, tenant, tenant_stream, session, front, now)
  local target, wake = nil, Q.wake
  if session then
    local owner = redis.call('HGET', session, 'owner')
    if owner and owner ~= '' and alive(owner, now) then target, wake = owner, owner .. ':wake' end
  end
  if not target then
    if front then
      target = Q.returned
    else
      target = tenant_stream
      if not redis.call('LPOS', Q.rotation, target) then redis.call('RPUSH', Q.rotation, target) end
    end
  end
  open_stream(target)
  redis.call('XADD', target, '*', 'task', task, 'tenant', tenant)
  redis.call('RPUSH', wake, '1')
end

-- Acknowledge and delete a jobs entry; a tenant's stream left empty goes, with its group.
local function ack(stream, entry, deletable)
  redis.pcall('XACK', stream, GROUP, entry)
  redis.call('XDEL', stream, entry)
  if deletable and redis.call('XLEN', stream) == 0 then
    redis.call('DEL', stream)
    redis.call('SREM', Q.streams, stream)
    redis.call('LREM', Q.rotation, 0, stream)
  end
end

-- A pending jobs entry goes back to the front: a new entry in `returned` that `replaces` it (the task's
-- TAKE accepts it in place of the old one, counts the delivery and fences the old holder off), with a
-- wake token; the old entry is acknowledged and deleted here, in the same script, so two watchers can
-- never both requeue it.
local function requeue_pending(stream, entry_id, fields)
  local task, tenant
  for i = 1, #fields, 2 do
    if fields[i] == 'task' then task = fields[i + 1] elseif fields[i] == 'tenant' then tenant = fields[i + 1] end
  end
  if task then
    open_stream(Q.returned)
    redis.call('XADD', Q.returned, '*', 'task', task, 'tenant', tenant or '', 'replaces', entry_id)
    redis.call('RPUSH', Q.wake, '1')
  end
  ack(stream, entry_id, string.find(stream, ':{jobs}:tenant:', 1, true) ~= nil)
  return task and 1 or 0
end

-- A pending entry, by id, back to the front (an entry deleted meanwhile is only acknowledged).
local function requeue_entry(stream, entry_id)
  local rows = redis.call('XRANGE', stream, entry_id, entry_id)
  if rows[1] then return requeue_pending(stream, entry_id, rows[1][2]) end
  redis.pcall('XACK', stream, GROUP, entry_id)
  return 0
end

-- Every job a lost consumer held (pending to it on any jobs stream, started or not) goes back to the front.
local function take_over(consumer)
  local moved = 0
  for _, stream in ipairs(redis.call('SMEMBERS', Q.streams)) do
    while true do
      local ok, pending = pcall(redis.call, 'XPENDING', stream, GROUP, '-', '+', 100, consumer)
      if not ok or #pending == 0 then break end
      for _, item in ipairs(pending) do
        moved = moved + requeue_entry(stream, item[1])
      end
    end
  end
  return moved
end

-- A worker's inbox: its undelivered entries move to `returned` (a wake token each).
local function move_unread(inbox, consumer)
  while true do
    local r = redis.pcall('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', 100, 'STREAMS', inbox, '>')
    if type(r) ~= 'table' or not r[1] then break end
    open_stream(Q.returned)
    for _, entry in ipairs(r[1][2]) do
      redis.call('XADD', Q.returned, '*', unpack(entry[2]))
      redis.call('RPUSH', Q.wake, '1')
      redis.call('XACK', inbox, GROUP, entry[1])
      redis.call('XDEL', inbox, entry[1])
    end
  end
end

-- A worker gone for good: its presence, names and (once empty) its inbox and tokens.
local function forget(inbox)
  redis.call('ZREM', Q.workers, inbox)
  redis.call('HDEL', Q.workers .. ':names', inbox, inbox .. '|levels', inbox .. '|leaving', inbox .. '|room')
  if redis.call('XLEN', inbox) == 0 then
    redis.call('DEL', inbox, inbox .. ':wake')
    redis.call('SREM', Q.streams, inbox)
  end
end

-- A dead worker (its presence expired, draining or not): the jobs it held go back to the front
-- (take_over), its inbox's unread entries to `returned`, and it is forgotten.
local function sweep(inbox, consumer)
  local dead = redis.call('HGET', Q.workers .. ':names', inbox)
  if dead then take_over(dead) end
  move_unread(inbox, consumer)
  forget(inbox)
end
"""

# KEYS: Q, queued, the tenant's stream[, session]. ARGV: max_queued, task id, tenant.
# -> {1 queued | 0 the queue is full | -1 no such session, depth}
SUBMIT = (
    _QUEUE
    + """
local n = tonumber(redis.call('GET', KEYS[6]) or '0')
local session = KEYS[8]
local now = now_ms()
if session and (redis.call('EXISTS', session) == 0 or touch(session, now) <= 0) then return {-1, n} end
if n >= tonumber(ARGV[1]) then return {0, n} end
route(ARGV[2], ARGV[3], KEYS[7], session, false, now)
return {1, redis.call('INCR', KEYS[6])}
"""
)

# KEYS: Q, this worker's inbox, its wake list. ARGV: consumer, the wake list a token was already popped
# from ('' for none), 1 to look in the inbox only. -> {stream, entry id, fields} or {} when there is nothing.
# Order: this worker's inbox (its sessions), then `returned`, then one job of the tenant at the head of
# the rotation, whose stream moves to the tail while it has more (each tenant's own order is kept).
TAKE_NEXT = (
    _QUEUE
    + """
local function read(stream)
  local r = redis.pcall('XREADGROUP', 'GROUP', GROUP, ARGV[1], 'COUNT', 1, 'STREAMS', stream, '>')
  if type(r) ~= 'table' or not r[1] then return nil end
  return r[1][2][1]
end

-- One token goes with each job taken: the one already popped if it was this job's list's, else one now
-- (and the popped one goes back to its list, for the job it announced).
local function taken(stream, entry, wake)
  if ARGV[2] ~= wake then
    redis.call('LPOP', wake)
    if ARGV[2] ~= '' then redis.call('RPUSH', ARGV[2], '1') end
  end
  return {stream, entry[1], entry[2]}
end

local entry = read(KEYS[6])
if entry then return taken(KEYS[6], entry, KEYS[7]) end
if ARGV[3] == '1' then return {} end
entry = read(Q.returned)
if entry then return taken(Q.returned, entry, Q.wake) end
for _ = 1, redis.call('LLEN', Q.rotation) do
  local stream = redis.call('LPOP', Q.rotation)
  if not stream then break end
  entry = read(stream)
  if entry then
    local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
    if last[1] and last[1][1] ~= entry[1] then redis.call('RPUSH', Q.rotation, stream) end
    return taken(stream, entry, Q.wake)
  end
end
return {}
"""
)

# KEYS: Q. ARGV: consumer, min idle ms. -> how many jobs went back to the front.
# The backstop for a worker that is alive (its presence is said) but silent on a job past its deadline: every
# entry idle longer than `min idle` on any stream (XAUTOCLAIM, so two reclaimers never both see one) is
# requeued at the front, as a dead worker's are, for whichever worker is free; none is kept by the caller.
RECLAIM = (
    _QUEUE
    + """
local moved = 0
for _, stream in ipairs(redis.call('SMEMBERS', Q.streams)) do
  if redis.call('EXISTS', stream) == 0 then
    redis.call('SREM', Q.streams, stream)
  else
    local cursor = '0-0'
    repeat
      local r = redis.pcall('XAUTOCLAIM', stream, GROUP, ARGV[1], ARGV[2], cursor, 'COUNT', 100)
      if type(r) ~= 'table' or r.err then break end
      cursor = r[1]
      for _, entry in ipairs(r[2]) do
        if type(entry) == 'table' and type(entry[2]) == 'table' then
          moved = moved + requeue_pending(stream, entry[1], entry[2])
        else
          redis.pcall('XACK', stream, GROUP, type(entry) == 'table' and entry[1] or entry)
        end
      end
    until cursor == '0-0'
  end
end
return moved
"""
)

# KEYS: Q. ARGV: consumer, then "stream|entry id" of each job it holds. Every other entry pending to the
# consumer goes back to the front: a take Redis ran whose reply the consumer never read (the connection was
# lost with it in flight), which would otherwise wait for the idle-time backstop. -> how many went back.
ORPHANS = (
    _QUEUE
    + """
local held = {}
for i = 2, #ARGV do held[ARGV[i]] = true end
local moved = 0
for _, stream in ipairs(redis.call('SMEMBERS', Q.streams)) do
  local ok, pending = pcall(redis.call, 'XPENDING', stream, GROUP, '-', '+', 1000, ARGV[1])
  if ok then
    for _, item in ipairs(pending) do
      if not held[stream .. '|' .. item[1]] then
        moved = moved + requeue_entry(stream, item[1])
      end
    end
  end
end
return moved
"""
)

# KEYS: Q, a jobs stream. ARGV: entry id, 1 if the stream is a tenant's (deleted once empty).
ACK = (
    _QUEUE
    + """
ack(KEYS[6], ARGV[1], ARGV[2] == '1')
"""
)

# KEYS: Q, queued, dequeued, the held entry's stream, the tenant's stream[, session].
# ARGV: task id, tenant, held entry id, 1 to queue the task again (0: only acknowledge), 1 if the held
# entry's stream is a tenant's. The task goes back to the front (see route) and into the queued count.
REQUEUE = (
    _QUEUE
    + """
if ARGV[4] == '1' then
  route(ARGV[1], ARGV[2], KEYS[9], KEYS[10], true, now_ms())
  if redis.call('SREM', KEYS[7], ARGV[1]) == 1 then redis.call('INCR', KEYS[6]) end
end
ack(KEYS[8], ARGV[3], ARGV[5] == '1')
"""
)

# KEYS: Q, this worker's inbox, then the sessions it holds a box for. ARGV: presence ttl ms, consumer, the
# isolation levels it serves (space-separated), its room for more sessions ("level:files:stateful ...", read
# by BIND when a worker without room gives a session to another). -> {1 if this worker had been declared dead
# since its last presence (the jobs it held went to others: it must drop them), then for each session 1 if
# its jobs still come here, else 0 (ended, expired, or moved to another worker)}.
# Every live worker's presence also declares the dead (presence expired) and takes their jobs over (sweep).
PRESENCE = (
    _QUEUE
    + """
local now = now_ms()
local names = Q.workers .. ':names'
local lost = (redis.call('HGET', names, KEYS[6]) == false) and 1 or 0
redis.call('ZADD', Q.workers, now + tonumber(ARGV[1]), KEYS[6])
redis.call('HSET', names, KEYS[6], ARGV[2], KEYS[6] .. '|levels', ARGV[3], KEYS[6] .. '|room', ARGV[4] or '')
open_stream(KEYS[6])
for _, inbox in ipairs(redis.call('ZRANGEBYSCORE', Q.workers, '-inf', '(' .. now)) do
  sweep(inbox, ARGV[2])
end
local reply = {lost}
for i = 7, #KEYS do
  reply[#reply + 1] = redis.call('HGET', KEYS[i], 'owner') == KEYS[6] and 1 or 0
end
return reply
"""
)

# KEYS: Q. ARGV: isolation level. -> how many live workers (presence not expired) serve the level.
SERVING = (
    _QUEUE
    + """
local now, n = now_ms(), 0
for _, inbox in ipairs(redis.call('ZRANGEBYSCORE', Q.workers, '(' .. now, '+inf')) do
  if alive(inbox, now) and serves(inbox, ARGV[1]) then n = n + 1 end
end
return n
"""
)

# KEYS: Q, session. -> false (no session) or {isolation, environment, digest, language, limits, 1 if a live
# worker holds it (its owner's presence has not expired) else 0}.
SESSION_RECORD = (
    _QUEUE
    + """
local f = redis.call('HMGET', KEYS[6], 'isolation', 'environment', 'digest', 'language', 'limits', 'owner')
if f[1] == false then return false end
local owner = f[6] or ''
local held = (owner ~= '' and alive(owner, now_ms())) and 1 or 0
return {f[1], f[2] or '', f[3] or '', f[4] or '', f[5] or '', held}
"""
)

# KEYS: Q, session. -> where a session file request goes: {'gone'} (no session), {'owner', inbox} (its live
# owner), {'pick', inbox...} (no live owner: the live workers serving its level, one of which places it), or
# {'none', level} (no live worker serves its level).
SESSION_TARGET = (
    _QUEUE
    + """
local session = KEYS[6]
if redis.call('EXISTS', session) == 0 then return {'gone'} end
local now = now_ms()
local owner = redis.call('HGET', session, 'owner') or ''
if owner ~= '' and alive(owner, now) then return {'owner', owner} end
local level = redis.call('HGET', session, 'isolation') or ''
local reply = {'pick'}
for _, inbox in ipairs(redis.call('ZRANGEBYSCORE', Q.workers, '(' .. now, '+inf')) do
  if alive(inbox, now) and serves(inbox, level) then reply[#reply + 1] = inbox end
end
if #reply == 1 then return {'none', level} end
return reply
"""
)

# KEYS: Q. ARGV: isolation level, session kind ('file' or 'stateful'). -> {how many live workers serve the
# level, how many more sessions of the kind they could open together (as their last presences said)}.
SESSION_ROOM = (
    _QUEUE
    + """
local now, serving, room = now_ms(), 0, 0
for _, inbox in ipairs(redis.call('ZRANGEBYSCORE', Q.workers, '(' .. now, '+inf')) do
  if alive(inbox, now) and serves(inbox, ARGV[1]) then
    serving = serving + 1
    room = room + room_for(inbox, ARGV[1], ARGV[2])
  end
end
return {serving, room}
"""
)

# KEYS: Q, this worker's inbox. ARGV: consumer, 1 if it is gone for good (retired). The worker stops being
# routed to and counted as serving (it is leaving); what waits in its inbox unread goes to `returned`. While
# it drains it keeps saying its presence, so if it dies then, its jobs are taken over as any dead worker's.
LEAVE = (
    _QUEUE
    + """
redis.call('HSET', Q.workers .. ':names', KEYS[6] .. '|leaving', '1')
move_unread(KEYS[6], ARGV[1])
if ARGV[2] == '1' then forget(KEYS[6]) end
"""
)

# KEYS: Q, session, this worker's inbox. ARGV: 1 if this worker still has the session's box, 1 if it has room
# for another session's box, the session's kind ('file' or 'stateful'). -> {verdict, ms until the session's
# absolute expiry}: 'gone' (no such session), 'elsewhere' (another live worker owns it: hand the job over),
# 'moved' (it would need a box here and there is no room: it is given to the live worker with the most room
# for its kind, as their last presences said, and the job goes there), 'full' (no live worker has room, or the
# session moved more often than there are workers: nothing is recorded), else it is this worker's from now on:
# 'ready' (its box is here), 'new' (no box yet), 'reset' (its box was lost with a worker: a fresh one).
BIND = (
    _QUEUE
    + """
local session, me = KEYS[6], KEYS[7]
if redis.call('EXISTS', session) == 0 then return {'gone', 0} end
local now = now_ms()
local owner = redis.call('HGET', session, 'owner') or ''
if owner ~= '' and owner ~= me and alive(owner, now) then return {'elsewhere', 0} end
local left = touch(session, now)
if left <= 0 then return {'gone', 0} end
local boxed = redis.call('HGET', session, 'boxed') or ''
local verdict = 'ready'
if boxed == '' then verdict = 'new' elseif boxed ~= me or ARGV[1] ~= '1' then verdict = 'reset' end
if verdict ~= 'ready' and ARGV[2] ~= '1' then
  local level = redis.call('HGET', session, 'isolation') or ''
  local best, most, live = nil, 0, 0
  for _, inbox in ipairs(redis.call('ZRANGEBYSCORE', Q.workers, '(' .. now, '+inf')) do
    if inbox ~= me and alive(inbox, now) then
      live = live + 1
      local n = room_for(inbox, level, ARGV[3])
      if n > most then best, most = inbox, n end
    end
  end
  if best and redis.call('HINCRBY', session, 'moves', 1) <= live + 1 then
    redis.call('HSET', session, 'owner', best)
    return {'moved', 0}
  end
  redis.call('HSET', session, 'moves', 0)
  return {'full', 0}
end
redis.call('HSET', session, 'owner', me, 'boxed', me, 'moves', 0)
return {verdict, tonumber(redis.call('HGET', session, 'expires_at')) - now}
"""
)

# KEYS: queued, dequeued. ARGV: task id. -> the queued count. Counts a task out once, however often taken.
DEQUEUE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then return redis.call('DECR', KEYS[1]) end
return tonumber(redis.call('GET', KEYS[1]) or '0')
"""

# KEYS: session. ARGV: ttl ms, idle ms, isolation level, environment, its digest, language (stateful only),
# limits JSON. A new session: no owner until its first run (or file request) binds one.
CREATE_SESSION = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'created', now, 'expires_at', now + tonumber(ARGV[1]), 'idle_ms', ARGV[2],
  'owner', '', 'boxed', '', 'isolation', ARGV[3], 'environment', ARGV[4], 'digest', ARGV[5],
  'language', ARGV[6], 'limits', ARGV[7])
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[1]), tonumber(ARGV[2])))
"""
