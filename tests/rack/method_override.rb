# A real Rack stack as certguard's upstream in the integration tests (tests/integration/frameworks.rs):
# Rack::MethodOverride, which every Rails app runs, in front of an app that answers with the
# method it was run as. Usage: ruby method_override.rb PORT
require 'rack'
require 'rack/handler/webrick'
require 'webrick'

app = Rack::Builder.new do
  use Rack::MethodOverride
  run lambda { |env| [200, { 'content-type' => 'text/plain' }, [env['REQUEST_METHOD']]] }
end

Rack::Handler::WEBrick.run(
  app,
  Host: '127.0.0.1',
  Port: Integer(ARGV.fetch(0)),
  Logger: WEBrick::Log.new($stderr, WEBrick::BasicLog::FATAL),
  AccessLog: []
)
