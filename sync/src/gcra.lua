-- tollgate-sync: one batch of GCRA buckets, atomically, on Redis's own clock.
--
-- The Lua twin of sync/src/model.rs (policy_core::bucket::Rate); the service replays every batch
-- through that model and compares. Redis's Lua has only doubles, exact to 2^53, while a scaled
-- TAT (nanoseconds x requests_per_unit) needs up to ~2^105: so the numbers are kept as decimal
-- strings in Redis and as little-endian arrays of base-10^7 limbs here (a limb product is below
-- 10^14, well inside a double's exact range).
--
-- KEYS[i]  the bucket's key (one per descriptor; a key may repeat), then, when ARGV[1] is not
--          '0', the round's key (tollgate:{DOMAIN}:round:ID)
-- ARGV[1]  how long (ms) to remember the round id, or '0' for a request without one
-- ARGV[2]  '' to run on Redis's TIME, or 'SEC USEC': the clock to run on instead (tests of
--          calendar periods' boundaries only; the service always sends '')
-- ARGV     then six per descriptor: op ('c' check | 's' sync), cost, window (= burst x period),
--          amount (requests_per_unit), refund, period; cost, window and refund in scaled units
--          (cells x period in ns), all decimal; period ''.
--          A calendar quota (sync/src/model.rs) counts cells in its period instead: cost, window
--          (= amount) and refund in cells, and period = 'START_NS END_NS EXPIRE_MS', the period
--          its key names (the key ends in its start), which must contain the clock, and when its
--          key expires. The value is the count of cells used in the period.
-- Returns  { now_sec, now_usec, applied ('1', or '0' for a round id applied before: nothing
--          was added and each row is the key's current state), then per descriptor: before,
--          after, fits ('1'/'0') }, all strings; `before` is the key's value when the batch
--          began ('0' when absent). When a quota's period does not contain the clock (the
--          service expected another time), nothing is read or written and the reply is
--          { now_sec, now_usec, 'period' }.

local BASE = 10000000

local function norm(a)
  while #a > 1 and a[#a] == 0 do a[#a] = nil end
  return a
end

local function parse(s)
  local a, i = {}, #s
  while i >= 1 do
    local j = math.max(1, i - 6)
    a[#a + 1] = tonumber(string.sub(s, j, i))
    i = j - 1
  end
  if #a == 0 then a[1] = 0 end
  return norm(a)
end

local function tostr(a)
  local parts = { string.format('%d', a[#a]) }
  for i = #a - 1, 1, -1 do parts[#parts + 1] = string.format('%07d', a[i]) end
  return table.concat(parts)
end

local function cmp(a, b)
  if #a ~= #b then return (#a < #b) and -1 or 1 end
  for i = #a, 1, -1 do
    if a[i] ~= b[i] then return (a[i] < b[i]) and -1 or 1 end
  end
  return 0
end

local function add(a, b)
  local c, carry = {}, 0
  for i = 1, math.max(#a, #b) do
    local t = (a[i] or 0) + (b[i] or 0) + carry
    if t >= BASE then c[i], carry = t - BASE, 1 else c[i], carry = t, 0 end
  end
  if carry > 0 then c[#c + 1] = carry end
  return c
end

-- a - b, for a >= b.
local function sub(a, b)
  local c, borrow = {}, 0
  for i = 1, #a do
    local t = a[i] - (b[i] or 0) - borrow
    if t < 0 then c[i], borrow = t + BASE, 1 else c[i], borrow = t, 0 end
  end
  return norm(c)
end

local function mul(a, b)
  local c = {}
  for i = 1, #a + #b do c[i] = 0 end
  for i = 1, #a do
    local carry = 0
    for j = 1, #b do
      local t = c[i + j - 1] + a[i] * b[j] + carry
      carry = math.floor(t / BASE)
      c[i + j - 1] = t - carry * BASE
    end
    local k = i + #b
    while carry > 0 do
      local t = c[k] + carry
      carry = math.floor(t / BASE)
      c[k] = t - carry * BASE
      k = k + 1
    end
  end
  return norm(c)
end

local function approx(a)
  local x = 0
  for i = #a, 1, -1 do x = x * BASE + a[i] end
  return x
end

local ZERO = { 0 }
local sec, usec
if ARGV[2] == '' then
  local time = redis.call('TIME')
  sec, usec = time[1], time[2]
else
  sec, usec = string.match(ARGV[2], '^(%d+) (%d+)$')
  if not sec then return redis.error_reply('tollgate: ARGV[2] is not SEC USEC') end
end
local now_ns = parse(sec .. string.format('%06d', tonumber(usec)) .. '000')
local now_ms = tonumber(sec) * 1000 + math.floor(tonumber(usec) / 1000)
local sub_ms_ns = (tonumber(usec) % 1000) * 1000

local round_ttl = ARGV[1]
local n = #KEYS
if round_ttl ~= '0' then n = n - 1 end
local op, cost, window, amount, refund, now_s = {}, {}, {}, {}, {}, {}
local quota, expire = {}, {}
local scaled_now = {}
for i = 1, n do
  local base = 2 + (i - 1) * 6
  op[i] = ARGV[base + 1]
  cost[i] = parse(ARGV[base + 2])
  window[i] = parse(ARGV[base + 3])
  amount[i] = ARGV[base + 4]
  refund[i] = parse(ARGV[base + 5])
  if ARGV[base + 6] ~= '' then
    local start, stop, at = string.match(ARGV[base + 6], '^(%d+) (%d+) (%d+)$')
    if not start then return redis.error_reply('tollgate: a period is not START END EXPIRE') end
    if cmp(now_ns, parse(start)) < 0 or cmp(now_ns, parse(stop)) >= 0 then
      return { sec, usec, 'period' }
    end
    quota[i], expire[i] = true, at
  else
    if scaled_now[amount[i]] == nil then scaled_now[amount[i]] = mul(now_ns, parse(amount[i])) end
    now_s[i] = scaled_now[amount[i]]
  end
end

-- The value of each key when the batch began.
local before, before_str = {}, {}
for i = 1, n do
  local k = KEYS[i]
  if before[k] == nil then
    local v = redis.call('GET', k)
    if not v then
      v = '0'
    elseif not string.match(v, '^%d+$') then
      return redis.error_reply('tollgate: key ' .. k .. ' does not hold a TAT')
    end
    before_str[k] = v
    before[k] = parse(v)
  end
end

-- A round id applied before: add nothing, answer the current state of its keys. Set in the
-- same script as the writes below, so an id is marked exactly when its batch is applied.
if round_ttl ~= '0' then
  if not redis.call('SET', KEYS[n + 1], '1', 'NX', 'PX', round_ttl) then
    local out = { sec, usec, '0' }
    for i = 1, n do
      local current = before_str[KEYS[i]]
      out[#out + 1] = current
      out[#out + 1] = current
      out[#out + 1] = '1'
    end
    return out
  end
end

local function full_is_zero(tat, i)
  if cmp(tat, now_s[i]) <= 0 then return ZERO end
  return tat
end

-- One pass over the batch; checks add their cost only when `charge_checks`.
local function run(charge_checks)
  local state, after, fits = {}, {}, {}
  for i = 1, n do
    local k = KEYS[i]
    local tat = state[k] or before[k]
    if cmp(tat, refund[i]) > 0 then tat = sub(tat, refund[i]) else tat = ZERO end
    if quota[i] then
      -- A count of cells in the period: the refund is given back above, and no refill.
      local next = add(tat, cost[i])
      if op[i] == 'c' then
        fits[i] = cmp(next, window[i]) <= 0
        if fits[i] and charge_checks then tat = next end
      else
        fits[i] = true
        tat = next
      end
      tat = norm(tat)
      state[k] = tat
      after[i] = tat
    else
      tat = full_is_zero(tat, i)
      local start = tat
      if cmp(start, now_s[i]) < 0 then start = now_s[i] end
      local next = add(start, cost[i])
      if op[i] == 'c' then
        fits[i] = cmp(sub(next, now_s[i]), window[i]) <= 0
        if fits[i] and charge_checks then tat = next end
      else
        fits[i] = true
        tat = next
      end
      tat = full_is_zero(tat, i)
      state[k] = tat
      after[i] = tat
    end
  end
  return state, after, fits
end

local state, after, fits = run(true)
local all_fit = true
for i = 1, n do
  if not fits[i] then all_fit = false end
end
if not all_fit then
  state, after = run(false)
end

-- Store each key's last state, expiring when the bucket is full again: the first millisecond at or
-- after its TAT, plus one for the rounding of `approx` (so never early).
local written = {}
for i = n, 1, -1 do
  local k = KEYS[i]
  if not written[k] then
    written[k] = true
    local tat = state[k]
    local text = tostr(tat)
    if text ~= before_str[k] then
      if cmp(tat, ZERO) == 0 then
        redis.call('DEL', k)
      elseif quota[i] then
        -- A period's count lives until the period ends (plus a margin): the next period is
        -- another key, so nothing has to be reset.
        redis.call('SET', k, text, 'PXAT', expire[i])
      else
        local ahead_ns = approx(sub(tat, now_s[i])) / tonumber(amount[i])
        local at = now_ms + math.ceil((sub_ms_ns + ahead_ns) / 1000000) + 1
        redis.call('SET', k, text, 'PXAT', string.format('%.0f', at))
      end
    end
  end
end

local out = { sec, usec, '1' }
for i = 1, n do
  out[#out + 1] = before_str[KEYS[i]]
  out[#out + 1] = tostr(after[i])
  out[#out + 1] = fits[i] and '1' or '0'
end
return out
