-- The hand-rolled session gate a user would write instead of sessiongate, for benches/bench.sh:
-- nginx + ngx_lua + Redis (Debian's libnginx-mod-http-lua and lua-nginx-redis). It verifies the
-- same HS256 ticket the gate issues (HMAC through OpenSSL's libcrypto, which nginx already links,
-- over LuaJIT's FFI), reads the session with one HMGET on a pooled connection, and passes two
-- identity headers. No JSON parse: the two claims it needs are matched in the decoded payload.
-- The bench writes `ng:s:<sid>` (status, userId) from the gate's own record of that session.
local ffi = require "ffi"
local b64 = require "ngx.base64"
local redis = require "nginx.redis"

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len);
]]
-- nginx is linked against libcrypto, so its symbols are already in the process.
local C = ffi.C
local md = ffi.new("unsigned char[32]")
local md_len = ffi.new("unsigned int[1]")

local _M = {}
local secret, redis_port

function _M.init(secret_b64url, port)
    secret = assert(b64.decode_base64url(secret_b64url), "bad secret")
    redis_port = port
end

-- Returns sid, user for an admitted request, or nil and the status to answer.
function _M.verify()
    local auth = ngx.var.http_authorization
    if not auth or auth:sub(1, 7) ~= "Bearer " then
        return nil, 401
    end
    local tok = auth:sub(8)
    local dot2 = tok:find(".", tok:find(".", 1, true) + 1, true)
    if not dot2 then
        return nil, 401
    end
    C.HMAC(C.EVP_sha256(), secret, #secret, tok, dot2 - 1, md, md_len)
    if b64.encode_base64url(ffi.string(md, 32)) ~= tok:sub(dot2 + 1) then
        return nil, 401
    end
    local payload = b64.decode_base64url(tok:sub(tok:find(".", 1, true) + 1, dot2 - 1))
    local sid = payload and payload:match('"sid":"([^"]+)"')
    local exp = payload and tonumber(payload:match('"exp":(%d+)'))
    if not sid or not exp or exp < ngx.time() then
        return nil, 401
    end
    local red = redis:new()
    red:set_timeout(50)
    if not red:connect("127.0.0.1", redis_port) then
        return nil, 503
    end
    local res = red:hmget("ng:s:" .. sid, "status", "userId")
    if not res then
        return nil, 503
    end
    red:set_keepalive(60000, 64)
    if res[1] ~= "active" then
        return nil, 401
    end
    return sid, res[2]
end

-- access_by_lua for the inline gate: admit with two headers, or answer the status.
function _M.access()
    local sid, user = _M.verify()
    if not sid then
        return ngx.exit(user)
    end
    ngx.req.set_header("X-Session-Id", sid)
    ngx.req.set_header("X-Session-User", user)
end

-- content_by_lua for the auth_request endpoint: 200 with the identity as headers, or the status.
function _M.auth_endpoint()
    local sid, user = _M.verify()
    if not sid then
        return ngx.exit(user)
    end
    ngx.header["X-Session-Id"] = sid
    ngx.header["X-Session-User"] = user
    return ngx.exit(200)
end

return _M
