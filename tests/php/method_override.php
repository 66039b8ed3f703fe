<?php
// Laravel's method override without Laravel, as certguard's upstream in the integration tests
// (tests/integration/frameworks.rs), run by PHP's built-in server: `php -S 127.0.0.1:PORT
// method_override.php`. PHP parses the body ($_POST: urlencoded and multipart forms) and
// Symfony's Request (Debian's php-symfony-http-foundation) decides the method, with Laravel's
// two additions: its HTTP kernel turns method override on, and Illuminate\Http\Request's
// createFromBase makes a JSON body the request bag when the Content-Type contains `/json` or
// `+json` (isJson, getInputSource). The answer is the method the request would run as.
require_once '/usr/share/php/Symfony/Component/HttpFoundation/autoload.php';

use Symfony\Component\HttpFoundation\InputBag;
use Symfony\Component\HttpFoundation\Request;

Request::enableHttpMethodParameterOverride();
$request = Request::createFromGlobals();
$type = $request->headers->get('CONTENT_TYPE') ?? '';
if (str_contains($type, '/json') || str_contains($type, '+json')) {
    $request->request = new InputBag((array) json_decode($request->getContent() ?: '[]', true));
}
header('Content-Type: text/plain');
try {
    echo $request->getMethod();
} catch (\Throwable $e) {
    echo 'ERROR';
}
