--[[ Replace one settings scope's document, if it is still at the version the writer read
  (lessor/scheduler/settings.py). Optimistic locking: the check and the write are one call.
  KEYS[1]  partition prefix (string): the settings partition (always partition 0)
  Touches: DELAYED, STREAM, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1] scope (* | */domain | project/domain)  ARGV[2] the version the writer read (0: none yet)
  ARGV[3] the new document: a JSON object of setting -> value (core/settings.py SETTINGS)
  Returns: {OK, new version} written, or {STALE, current version}: the scope changed since the
    writer read it, and nothing was written.
  Events: settings_changed ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local scope, read_version, text = ARGV[1], ARGV[2], ARGV[3]

-- The scope: *, */domain or project/domain.
local function bad_scope(v)
  if v == '*' then return nil end
  local p, d = string.match(v or '', '^([^/]+)/([^/]+)$')
  if p and (p == '*' or not bad_id('project', p)) and not bad_id('domain', d) then return nil end
  return 'scope must be *, */domain or project/domain, got ' .. string.sub(tostring(v), 1, 80)
end

-- The document against the settings' kinds (generated from core/settings.py): the reason it
-- may not be written, or nil. Python checks ranges and names too; this keeps a foreign
-- client from logging a document lessor's readers cannot use.
local function bad_document(t)
  local ok, doc = pcall(cjson.decode, t)
  if not ok or type(doc) ~= 'table' then return 'document must be a JSON object' end
  for key, v in pairs(doc) do
    local kind = SETTING_KINDS[key]
    if type(key) ~= 'string' or kind == nil then return 'unknown setting ' .. string.sub(tostring(key), 1, 80) end
    if v ~= UNSET then
      if kind == 's' then
        if type(v) ~= 'string' or v == '' then return key .. ' must be a non-empty string' end
      elseif kind == 'i' or kind == 'n' then
        if type(v) ~= 'number' or (kind == 'i' and v % 1 ~= 0) or v ~= v or v < 0 or v > SAFE_INT then
          return key .. ' must be a number within 0..' .. S(SAFE_INT)
        end
      else
        if type(v) ~= 'table' then return key .. ' must be a map of names to strings' end
        for k, x in pairs(v) do
          if type(k) ~= 'string' or type(x) ~= 'string' then return key .. ' must be a map of names to strings' end
        end
      end
    end
  end
end

local err = refuse('settings', bad_scope(scope), bad_int('version', read_version, 0, SAFE_INT),
  bad_text('document', text, 65536))
if err then return err end
err = refuse('settings', bad_document(text))
if err then return err end
checked()

local key = setkey(scope)
local h = hget(key, 'phase', 'version')
local current = tonumber(h.version)
if current ~= tonumber(read_version) then return {STALE, current} end
emit({type = 'settings_changed', ns = scope, version = current + 1, document = text, previous = current},
  h.phase or NO_PHASE)
return {OK, current + 1}
