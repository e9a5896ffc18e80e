'use strict';
// The benchmark's Express app: /guarded behind banshare's middleware, /plain without.
//   node express-app.js PORT BANSHARE_URL      (express from NODE_PATH)
const express = require('express');
const { banshare } = require('../../contrib/node/banshare-check');

const [port, url] = process.argv.slice(2);
const app = express();
app.set('trust proxy', 'loopback');
const hello = (req, res) => res.type('text/plain').send('hello\n');
app.get('/plain', hello);
app.get('/guarded', banshare({ url }), hello);
app.listen(Number(port), '127.0.0.1');
