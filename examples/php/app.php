<?php
// The seed's handler: a plain PHP app that never holds a connection. switchboard holds them; this app
// tells switchboard who a connection is (the connect proxy, once per connection, from the PHP session
// cookie) and pushes to users through switchboard's HTTP API.
//
// Run: php -S 127.0.0.1:8000 app.php   (and switchboard --config examples/php/switchboard.toml)

declare(strict_types=1);

$API_URL = getenv('SWITCHBOARD_API_URL') ?: 'http://127.0.0.1:8081';
$API_KEY = getenv('SWITCHBOARD_API_KEY') ?: 'example-api-key';
// switchboard sends this header with every proxy call ([proxy] headers); anyone else is refused.
$PROXY_SECRET = getenv('SWITCHBOARD_PROXY_SECRET') ?: 'example-proxy-secret';

session_save_path(sys_get_temp_dir());

function reply(int $status, array $body): void
{
    http_response_code($status);
    header('Content-Type: application/json');
    echo json_encode($body, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
}

function body(): array
{
    $data = json_decode(file_get_contents('php://input') ?: '{}', true);
    return is_array($data) ? $data : [];
}

/** Publishes through switchboard's server API; returns [HTTP status, decoded answer]. */
function publish(string $channel, array $data): array
{
    global $API_URL, $API_KEY;
    $context = stream_context_create(['http' => [
        'method' => 'POST',
        'header' => "Content-Type: application/json\r\nX-API-Key: $API_KEY\r\n",
        'content' => json_encode(['channel' => $channel, 'data' => $data]),
        'ignore_errors' => true,
        'timeout' => 5,
    ]]);
    $answer = @file_get_contents("$API_URL/api/publish", false, $context);
    if ($answer === false) {
        return [502, ['error' => 'switchboard is not reachable at ' . $API_URL]];
    }
    preg_match('{HTTP/\S+ (\d+)}', $http_response_header[0] ?? '', $m);
    return [(int)($m[1] ?? 502), json_decode($answer, true) ?? []];
}

$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
$method = $_SERVER['REQUEST_METHOD'];

// Calls from switchboard (the proxies).
if (str_starts_with($path, '/switchboard/')) {
    if (($_SERVER['HTTP_X_SWITCHBOARD_SECRET'] ?? '') !== $PROXY_SECRET) {
        reply(403, ['error' => ['code' => 1403, 'message' => 'not switchboard']]);
        return;
    }
    $event = body();
    switch ($path) {
        case '/switchboard/connect':
            // The client's PHPSESSID cookie came with the WebSocket handshake; switchboard forwards it.
            session_start();
            if (!isset($_SESSION['user'])) {
                reply(200, ['error' => ['code' => 1401, 'message' => 'log in first']]);
                return;
            }
            reply(200, ['result' => [
                'user' => $_SESSION['user'],
                'info' => ['name' => $_SESSION['user']],
                'channels' => ['news:' . $_SESSION['user']],
            ]]);
            return;
        case '/switchboard/rpc':
            if (($event['method'] ?? '') === 'time') {
                reply(200, ['result' => ['data' => ['now' => time(), 'user' => $event['user'] ?? '']]]);
            } else {
                reply(200, ['error' => ['code' => 1404, 'message' => 'no such method']]);
            }
            return;
    }
    reply(404, ['error' => ['code' => 1404, 'message' => "unknown event $path"]]);
    return;
}

// The app's own pages.
if ($path === '/login' && $method === 'POST') {
    $user = (string)(body()['user'] ?? '');
    if (!preg_match('/^[a-z0-9_]{1,32}$/', $user)) {
        reply(400, ['error' => 'user: 1 to 32 of a-z, 0-9, _']);
        return;
    }
    session_start();
    $_SESSION['user'] = $user;
    reply(200, ['user' => $user]);
    return;
}

if ($path === '/notify' && $method === 'POST') {
    // Push a notification to a user's personal channel: the page that calls this returns at once; the
    // user's browser gets it through switchboard.
    session_start();
    if (!isset($_SESSION['user'])) {
        reply(401, ['error' => 'log in first']);
        return;
    }
    $input = body();
    $to = (string)($input['to'] ?? '');
    [$status, $answer] = publish("news:$to", [
        'from' => $_SESSION['user'],
        'text' => (string)($input['text'] ?? ''),
    ]);
    reply($status, $answer);
    return;
}

reply(404, ['error' => 'not found']);
