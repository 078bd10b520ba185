import sys

from chat_pretrain.cli import main

sys.exit(main())
