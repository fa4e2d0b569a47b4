-- Shared prelude, prepended to scripts that emit events.
-- emit(events_key, maxlen, outbox_key, delivery_prefix, retention_ms, now_ms, payload):
-- XADDs each event (capped with MAXLEN ~) and queues its hook deliveries in the outbox,
-- inside the caller's script so the state change, its events and deliveries are one step.
local function emit(events_key, maxlen, outbox_key, delivery_prefix, retention_ms, now_ms, payload)
  for _, ev in ipairs(payload) do
    local flat = {}
    for _, pair in ipairs(ev.fields) do
      flat[#flat + 1] = pair[1]
      flat[#flat + 1] = pair[2]
    end
    redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', unpack(flat))
    for _, d in ipairs(ev.deliveries) do
      redis.call('SET', delivery_prefix .. d.id, d.body, 'PX', retention_ms)
      redis.call('ZADD', outbox_key, now_ms, d.id)
    end
  end
end
